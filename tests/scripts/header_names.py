# An undecorated run() that answers with the names of the request headers it was handed.
def init():
    pass


def run(data, request_headers):
    return sorted(name.lower() for name in request_headers)
