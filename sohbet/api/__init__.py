"""The HTTP faces of the chat server toward applications: the route table, the HTTP API, the
metrics endpoint and the webhook.

Layer: transport. Imports the service and the layers below it; never a concrete store.
"""
