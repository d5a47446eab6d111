# Every way of reading a fact that pcq's analysis must see, in one class
# (the verify nodes include it): a Hiera interpolation (`motto`, from
# data/common.yaml), `$facts.dig`, a legacy top-scope variable, getvar(),
# and an ERB template reading `@pcq_erb` and `scope['::pcq_scope']`.
class pcq_test::tricky (
  String $motto = 'none',
) {
  $zone = $facts.dig('pcq_site', 'zone')
  $legacy = $::pcq_legacy
  $by_name = getvar('pcq_getvar')

  file { '/tmp/pcq-e2e/tricky':
    ensure  => file,
    content => "${motto} ${zone} ${legacy} ${by_name}\n",
  }
  file { '/tmp/pcq-e2e/tricky.erb':
    ensure  => file,
    content => template('pcq_test/tricky.erb'),
  }
}
