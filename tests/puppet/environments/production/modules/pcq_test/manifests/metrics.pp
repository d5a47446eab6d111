# A metrics and file-sync host built from Debian's modules
# (voxpupuli-collectd, puppetlabs-rsync and puppetlabs-xinetd), for the
# precision measurement of the analysis. (saz-rsyslog is installed as
# `saz-rsyslog`, a directory name Puppet does not load as `rsyslog`.)
class pcq_test::metrics {
  class { 'collectd':
    purge_config => true,
  }
  include collectd::plugin::cpu
  include collectd::plugin::memory
  include collectd::plugin::load
  class { 'collectd::plugin::network':
    servers => { 'metrics.example.com' => { 'port' => 25826 } },
  }
  class { 'rsync::server':
    use_xinetd => true,
  }
  rsync::server::module { 'backups':
    path => '/srv/backups',
  }
}
