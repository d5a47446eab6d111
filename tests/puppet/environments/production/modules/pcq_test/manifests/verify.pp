# What `pcq analyze --verify` compiles in the test suite: real modules
# from Debian's packages (ntp, apache with a vhost, saz-ssh, memcached,
# haproxy with a listener, concat and stdlib underneath) and every way of
# reading a fact (pcq_test::tricky), so the analysis is checked against
# the real compiler on real code.
class pcq_test::verify {
  include pcq_test::files
  include pcq_test::tricky

  class { 'ntp':
    servers => ['0.pool.ntp.org'],
  }
  class { 'apache':
    default_vhost => false,
  }
  apache::vhost { 'www.example.com':
    port    => 80,
    docroot => '/var/www/example',
  }
  class { 'ssh':
    storeconfigs_enabled => false,
  }
  class { 'memcached':
    max_memory => '10%',
  }
  class { 'haproxy': }
  haproxy::listen { 'web':
    ipaddress => $facts['networking']['ip'],
    ports     => '8080',
  }
  haproxy::balancermember { 'web-01':
    listening_service => 'web',
    server_names      => 'web-01.example.com',
    ipaddresses       => '10.0.0.1',
    ports             => '80',
  }
}
