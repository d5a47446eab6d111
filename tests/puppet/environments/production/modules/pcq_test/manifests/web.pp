# A web node of the exported-resources test: it exports its backend entry
# (a file, tagged `pcq_backend`) whose content follows the `pcq_address`
# fact; the lb node collects every such entry.
class pcq_test::web {
  include pcq_test::files

  $address = pick($facts['pcq_address'], '127.0.0.1')

  @@file { "/tmp/pcq-e2e/backend-${trusted['certname']}":
    ensure  => file,
    content => "server ${trusted['certname']} ${address}:80\n",
    tag     => ['pcq_backend'],
  }
}
