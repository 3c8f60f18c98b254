# Python-visible API of the compiled `_protocol` module: exactly its pure-Python twin's.
from sohbet.ws._protocol_py import CLOSED as CLOSED
from sohbet.ws._protocol_py import CLOSING as CLOSING
from sohbet.ws._protocol_py import OPEN as OPEN
from sohbet.ws._protocol_py import WINDOW_SLOTS as WINDOW_SLOTS
from sohbet.ws._protocol_py import BinaryReceived as BinaryReceived
from sohbet.ws._protocol_py import Connection as Connection
from sohbet.ws._protocol_py import TextReceived as TextReceived

POLICY_VIOLATION: int
