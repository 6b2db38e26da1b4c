"""The wiring around the services: the command line, the local stack and its launchers, the simulator.

Dev tooling, not shipped in the service image: ``connector`` (the core), ``ml_backend`` and
``sync`` (the services) import nothing from here.
"""
