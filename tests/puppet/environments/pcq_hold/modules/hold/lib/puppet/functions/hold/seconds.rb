# Sleeps in the compile, holding its JRuby: the pool-gate test's stand-in
# for other requests on the master.
Puppet::Functions.create_function(:'hold::seconds') do
  dispatch :hold do
    param 'Numeric', :seconds
  end

  def hold(seconds)
    sleep(seconds)
    seconds
  end
end
