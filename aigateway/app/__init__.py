"""
twistd glue, the only place that knows the global reactor:

  - L{aigateway.app.tap}: C{twistd aigateway}'s options and service;
  - L{aigateway.app.service}: the gateway service, composed of
  - L{aigateway.app.current} (the gateway served, swapped on reload),
    L{aigateway.app.configfile} (the file and what it names),
    L{aigateway.app.reload} (take a new configuration or keep the last
    good one), L{aigateway.app.listeners} (ports that follow C{listen}),
    L{aigateway.app.drain} (the graceful stop) and
    L{aigateway.app.watch} (the inotify watch);
  - L{aigateway.app.admin}: the admin site;
  - L{aigateway.app.heap}: short pauses from the cycle collector.
"""
