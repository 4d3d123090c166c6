"""petribill.v1: generated gRPC stubs; never edited by hand."""
