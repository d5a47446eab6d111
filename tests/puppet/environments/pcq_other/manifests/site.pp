# A second environment: nodes the classifier (scripts/puppet-setup's ENC)
# leaves free may ask for it; pinned ones are compiled in production.
node default {
  file { '/tmp/pcq-e2e/environment':
    content => 'pcq_other',
  }
}
