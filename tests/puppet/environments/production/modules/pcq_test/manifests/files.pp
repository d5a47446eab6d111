# What pcq_test manages that is safe to apply on a test machine: a file
# under /tmp whose content follows the `pcq_role` and `pcq_color` facts.
class pcq_test::files {
  $role = pick($facts['pcq_role'], 'none')
  $color = pick($facts['pcq_color'], 'grey')

  file { '/tmp/pcq-e2e':
    ensure => directory,
  }
  file { "/tmp/pcq-e2e/${trusted['certname']}.role":
    ensure  => file,
    content => "role=${role} color=${color}\n",
  }
}
