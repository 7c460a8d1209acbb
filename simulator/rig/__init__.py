"""The rig: real parts on free ports, shared by the tests, the benchmarks and the simulator.
An ``edgefleet server`` process (``server``), agents on their own loops, an artifact server
with faults and signed desired states (``agents``), one agent against a private broker
(``agent_rig``), a fleet of agents against a server (``fleet``), and signed models made as
the control plane makes them (``models``)."""
