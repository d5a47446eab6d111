# pcq end-to-end test code: every node gets NTP (puppetlabs-ntp, which uses
# stdlib), a motd assembled with puppetlabs-concat, and a file whose
# content depends on the fact `pcq_role` (so a change of that fact changes
# the catalog) and nothing on volatile facts such as uptime.
node default {
  include pcq_test
}

# Nodes whose catalog a real `puppet agent` applies on the test machine:
# files under /tmp only.
node /^sync-/ {
  include pcq_test::files
}

# The exported-resources test: web nodes export their backend entry, the
# lb node collects them (through PuppetDB).
node /^web-/ {
  include pcq_test::web
}

node /^lb-/ {
  include pcq_test::lb
}

# Nodes `pcq analyze --verify` compiles: several real modules at once.
node /^verify-/ {
  include pcq_test::verify
}

# Trusted certificate extensions (csr_attributes.yaml, signed by the CA):
# pcq must compile what the agent's own request would get.
node /^trusted-/ {
  $ext = $trusted['extensions']
  file { "/tmp/pcq-e2e/${trusted['certname']}.trusted":
    content => "role=${ext['pp_role']} private=${ext['1.3.6.1.4.1.34380.1.2.1']} host=${trusted['hostname']}\n",
  }
}

# Two more roles for measuring the analysis's precision on real modules:
# a database server, and a metrics and file-sync host.
node /^db-/ {
  include pcq_test::db
}

node /^metrics-/ {
  include pcq_test::metrics
}
