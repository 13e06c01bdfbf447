def init():
    pass


def run(data, request_headers):
    return {"data": data, "custom": request_headers.get("X-Custom-Header"), "has_title_case": "Content-Type" in request_headers}
