"""The chat domain: ids, the model, the wire codec and the hub; pure and synchronous.

Layer: domain. Imports orjson, `sohbet.errors` and the WebSocket layer's codes; no asyncio, no
I/O, no clock (time comes in as an argument). The service (`sohbet.service`) drives it.
"""
