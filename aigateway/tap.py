from twisted.python import usage
class Options(usage.Options):
    optParameters = [["config", "c", "etc/gateway.yaml", "config"]]
def makeService(options):
    from twisted.application.service import MultiService
    return MultiService()
