#include "config/config.h"

namespace grelay::config {

const char* toString(RelayPath path) {
  switch (path) {
    case RelayPath::Auto:
      return "auto";
    case RelayPath::Group:
      return "group";
    case RelayPath::Mainline:
      return "mainline";
    case RelayPath::Copy:
      return "copy";
  }
  return "?";
}

const char* toString(Balance balance) {
  switch (balance) {
    case Balance::RoundRobin:
      return "round_robin";
    case Balance::LeastConn:
      return "least_conn";
    case Balance::Source:
      return "source";
  }
  return "?";
}

const char* toString(ProxyProtocol version) {
  switch (version) {
    case ProxyProtocol::Off:
      return "off";
    case ProxyProtocol::V1:
      return "v1";
    case ProxyProtocol::V2:
      return "v2";
  }
  return "?";
}

const char* toString(MirrorDirection direction) {
  switch (direction) {
    case MirrorDirection::Request:
      return "request";
    case MirrorDirection::Both:
      return "both";
  }
  return "?";
}

}  // namespace grelay::config
