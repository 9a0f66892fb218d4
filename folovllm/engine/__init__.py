"""The engine: requests in, RequestOutputs out, one step at a time."""
