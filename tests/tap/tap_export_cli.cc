// Stand-in for `grelay tap ...` until proxy/main dispatches to tapMain():
// `tap_export_cli tap export --pcap OUT TAP...`.
#include <iostream>

#include "proxy/tap/tap_cli.h"

int main(int argc, char** argv) {
  return grelay::tap::tapMain(argc - 1, argv + 1, std::cout, std::cerr);
}
