"""petribill wire types (generated from the .proto files by the build)."""
