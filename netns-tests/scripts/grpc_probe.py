#!/usr/bin/python3
"""A real gRPC server and client (grpcio) for the L7 tests, without
generated code: messages are raw bytes, which gRPC frames as they are.

  grpc_probe.py serve IP:PORT            every method answers "<method> <request>"
  grpc_probe.py call IP:PORT METHOD...   one channel (one HTTP/2 connection);
                                         prints "METHOD STATUS DETAILS" per call
"""
import sys
from concurrent import futures

import grpc


class Echo(grpc.GenericRpcHandler):
    def service(self, details):
        method = details.method
        return grpc.unary_unary_rpc_method_handler(lambda req, ctx: method.encode() + b" " + req)


def serve(addr):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((Echo(),))
    server.add_insecure_port(addr)
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def call(addr, methods):
    with grpc.insecure_channel(addr) as ch:
        for m in methods:
            try:
                reply = ch.unary_unary(m)(b"hi", timeout=5)
                print(m, "OK", reply.decode(), flush=True)
            except grpc.RpcError as e:
                print(m, e.code().name, e.details(), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2])
    else:
        call(sys.argv[2], sys.argv[3:])
