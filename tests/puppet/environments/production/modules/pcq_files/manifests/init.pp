# A file served by Puppet Server's file_metadata and file_content
# endpoints: the file-serving end-to-end test fetches it in a loop, as an
# agent applying this class would.
class pcq_files {
  file { '/tmp/pcq-e2e/served.txt':
    ensure => file,
    source => 'puppet:///modules/pcq_files/served.txt',
  }
}
