"""The deploy kit: what a coordinator and each site run for a federation across machines.

Shipped inside the package (no source checkout needed) and driven by ``secure-ft deploy``:

``certificates``   the federation's CA, the SuperLink's TLS certificate, SuperNode key pairs
``flower_runtime`` Flower's commands next to this Python, offline settings, the flwr connection,
                   the Flower app folder ``flwr run`` builds from (package data ``flower_app/``)
``fleet_front``    the TLS front sites connect to: forwards the Fleet API only, so the
                   SuperLink's Control API (registering sites, listing and starting runs)
                   stays on the coordinator's loopback address
``site_registry``  site names kept with their registered keys (``secure-ft sites list``)
``site_identity``  a starting SuperNode asks the front which site its key is registered as
``processes``      starting and stopping the Flower processes by process group

See ``deploy/README.md`` for the step-by-step guide.
"""
