"""The pure billing domain: money, usage records, tariffs, rating, charging, bills, payments.

Nothing here imports Ray, gRPC or RocksDB, or reads a clock it was not handed.
"""
