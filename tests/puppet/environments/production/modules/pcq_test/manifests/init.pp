# The test profile. `pcq_role` and `pcq_color` are custom facts the tests
# set; `uptime_seconds` is deliberately not read.
class pcq_test (
  String $motd_owner = 'root',
) {
  $role = pick($facts['pcq_role'], 'none')

  include pcq_test::files

  class { 'ntp':
    servers  => ['0.pool.ntp.org', '1.pool.ntp.org'],
    restrict => ['127.0.0.1'],
  }

  concat { '/etc/motd.pcq':
    owner => $motd_owner,
    mode  => '0644',
  }
  concat::fragment { 'motd-header':
    target  => '/etc/motd.pcq',
    content => "Managed by Puppet through pcq\n",
    order   => '01',
  }
  concat::fragment { 'motd-role':
    target  => '/etc/motd.pcq',
    content => epp('pcq_test/role.epp', { 'role' => $role }),
    order   => '10',
  }
}
