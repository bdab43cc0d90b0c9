"""What the tests, the bench and the demo share: free ports, polling with a timeout, real server
processes started and stopped by PID, clients in flight, load generators and real stores.

Each module is one concept; import from the module that names it (``tests.support.ports``...).
"""
