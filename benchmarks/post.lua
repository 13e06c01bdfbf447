-- wrk request script for http_bench.py: POST one 1x10 diabetes row to /score.
wrk.method = "POST"
wrk.body = '{"data": [[1,2,3,4,5,6,7,8,9,10]]}'
wrk.headers["Content-Type"] = "application/json"
