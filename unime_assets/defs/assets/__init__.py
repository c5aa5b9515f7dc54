"""One module per pipeline stage; each asset: read inputs, call the method layer, write, log, describe."""
