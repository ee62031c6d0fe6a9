"""dataserver-terminal: a trader's screen over the gateway (a client of the data server)."""
