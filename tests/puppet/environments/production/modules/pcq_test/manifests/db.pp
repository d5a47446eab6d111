# A database server built from Debian's modules (puppetlabs-mysql and
# puppetlabs-postgresql), for the precision measurement of the analysis.
class pcq_test::db {
  class { 'mysql::server':
    root_password    => 'not-a-secret',
    override_options => { 'mysqld' => { 'max_connections' => '200' } },
  }
  mysql::db { 'app':
    user     => 'app',
    password => 'not-a-secret',
  }
  # the module knows no default PostgreSQL version for Debian 12
  class { 'postgresql::globals':
    version => '15',
  }
  class { 'postgresql::server': }
  postgresql::server::db { 'reports':
    user     => 'reports',
    password => 'not-a-secret',
  }
}
