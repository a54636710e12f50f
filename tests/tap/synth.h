// Random tap sessions written through TapLayout exactly like the engine does (group path:
// reserve with a cap, then the received length; mainline path: reserve the known length),
// producing the list of WRITEs (payload and record bytes at their offsets) plus the streams
// every session really carried. Shared by the unit tests and the tap_synth tool.
#pragma once

#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "proxy/tap/layout.h"

namespace grelay::tap::testing {

struct SynthOptions {
  uint64_t seed = 1;
  uint32_t sessions = 20;
  uint32_t firstPort = 20000;  // client ports firstPort, firstPort + 1, ... (unique)
  uint32_t worker = 0;
  TapLayoutOptions layout;
  uint32_t maxChunk = 150000;         // chunks of 1..maxChunk bytes (the exporter splits at 65000)
  uint32_t maxSessionBytes = 400000;  // per direction
  uint32_t gapPercent = 0;            // chance per chunk that it is recorded as a gap instead
  uint32_t resetPercent = 25;         // chance per direction of ending with RST
  uint32_t abandonPercent = 5;        // chance per chunk of an abandoned reservation first
  uint32_t parallel = 6;              // sessions open at the same time
  bool finish = true;                 // write the file-end record
};

struct WriteOp {
  uint64_t offset = 0;
  std::vector<uint8_t> bytes;
  int session = -1;  // index into SynthResult::sessions, -1 = file header/end
};

struct ExpectedStream {
  std::vector<uint8_t> bytes;                       // everything the direction carried
  std::vector<std::pair<uint64_t, uint64_t>> gaps;  // (stream offset, length) not recorded
  std::optional<EndKind> end;
  std::vector<uint8_t> captured() const;  // bytes minus the gaps
};

struct ExpectedSession {
  TapSessionInfo info;
  bool recorded = true;  // false: refused (file full), not in the tap at all
  ExpectedStream streams[2];
  bool closed = false;
  uint64_t lastByte = 0;  // end of the furthest write belonging to this session
};

struct SynthResult {
  std::vector<WriteOp> writes;  // in the order the engine would submit them
  std::vector<ExpectedSession> sessions;
  uint64_t fileSize = 0;
  TapFileIdentity identity;
};

SynthResult synthesize(const SynthOptions& options);

// Applies writes to a memory image (the file's final content).
std::vector<uint8_t> applyWrites(const std::vector<WriteOp>& writes);

}  // namespace grelay::tap::testing
