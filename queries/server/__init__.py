"""`imgdex serve`: the index behind the Container Registry gRPC and REST read API.

app.py        the click command: addresses, auth, signals, start-up and shutdown
snapshots.py  the served snapshot, loaded once per completed index run and swapped in
rules.py      the API's request validation, read from the request messages' options (see queries/api_rules.py)
api.py        the read methods, transport-neutral: request message in, JSON dict out
pages.py      ListImages pages from memory: each order sorted once per snapshot
catalog.py    repositories and registries derived from the images
grpc_api.py   the official servicers, health and reflection, the bearer-token check
rest_api.py   the same methods over HTTP/1.1 with the public REST paths
"""
