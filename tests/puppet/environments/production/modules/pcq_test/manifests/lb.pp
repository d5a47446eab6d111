# The load balancer of the exported-resources test: it collects the
# backend entries the web nodes export.
class pcq_test::lb {
  include pcq_test::files

  File <<| tag == 'pcq_backend' |>>
}
