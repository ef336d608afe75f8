#pragma once
// cppzmq's types, declared for the headers that hold sockets by pointer (so that their users do
// not include zmq.hpp).

namespace zmq {
class context_t;
class socket_t;
}  // namespace zmq
