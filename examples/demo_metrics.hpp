// ordo-demo's --metrics-port: a tiny HTTP endpoint on the loopback
// interface that answers every GET with the scheduler's stats in the
// Prometheus text format (point a Prometheus scrape, or curl, at it).
//
// Thread-safety: start and stop from one thread; requests are answered on
// the server's own thread, one at a time, by calling `body`.
#pragma once

#include <functional>
#include <string>
#include <thread>

namespace demo {

class MetricsServer {
 public:
  // Listens on 127.0.0.1:port (0: none). Throws std::runtime_error naming
  // the port if it cannot listen.
  MetricsServer(int port, std::function<std::string()> body);
  ~MetricsServer();  // stops serving
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;
  int port() const noexcept { return port_; }

 private:
  void serve();

  int port_ = 0;
  int listen_fd_ = -1;
  int stop_pipe_[2] = {-1, -1};
  std::function<std::string()> body_;
  std::thread thread_;
};

}  // namespace demo
