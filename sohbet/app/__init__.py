"""One port composed: the gateway (auth at the upgrade), plain-HTTP routing, and `sohbet-server`.

Layer: entry. The only place that picks concrete implementations (which store; from step 8,
which broker), reads files and the environment, and owns the process.
"""
