// On-disk structures of the tap file (*.gtap). FORMAT.md describes the layout and the
// writer protocol; this header is the single source of truth for field offsets.
//
// All integers are little-endian; the structs are packed and copied with memcpy, so the
// code assumes a little-endian host (static_assert below).
#pragma once

#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>

namespace grelay::tap {

static_assert(std::endian::native == std::endian::little,
              "the tap format is little-endian; add byte swapping for big-endian hosts");

inline constexpr std::array<uint8_t, 8> kFileMagic = {'G', 'R', 'E', 'L', 'A', 'Y', 'T', 'P'};
inline constexpr uint16_t kFormatVersion = 1;
// "GTBK" and "GTCH" as they appear in the file.
inline constexpr uint32_t kBlockMagic = 0x4b425447;
inline constexpr uint32_t kChunkMagic = 0x48435447;
// Every block and chunk header starts at a multiple of this.
inline constexpr uint64_t kAlign = 8;
inline constexpr size_t kListenerNameMax = 64;

inline constexpr uint64_t alignUp(uint64_t v) {
  return (v + kAlign - 1) & ~(kAlign - 1);
}

enum class BlockType : uint16_t {
  kExtent = 1,
  kSessionOpen = 2,
  kDirectionEnd = 3,
  kSessionClose = 4,
  kGap = 5,
  kFileEnd = 6,
};

// File-level flags in FileEndRecord::flags.
inline constexpr uint32_t kFileEndFull = 1u << 0;  // recording stopped at max_size

#pragma pack(push, 1)

// Offset 0. crc = crc32c of the 128 bytes with crc = 0.
struct FileHeader {
  uint8_t magic[8];                 // "GRELAYTP"
  uint16_t version;                 // kFormatVersion
  uint16_t headerSize;              // sizeof(FileHeader); the first block starts here
  uint32_t flags;                   // 0
  uint64_t salt;                    // random per file, mixed into every block/chunk crc
  uint64_t createdNs;               // CLOCK_REALTIME when the file was created
  uint64_t maxSize;                 // byte budget the writer used (0 = unlimited)
  uint32_t pid;                     // writer process
  uint32_t worker;                  // writer worker thread index
  char listener[kListenerNameMax];  // listener name, NUL-padded (not terminated if 64 long)
  uint8_t reserved[12];
  uint32_t crc;
};
static_assert(sizeof(FileHeader) == 128);

// Starts every block. size = whole block (multiple of 8). crc = crc32c(salt, file offset of
// the block, the block's fixed part with crc = 0); the fixed part is the record struct below
// (for extents: ExtentHeader, not the chunk data that follows).
struct BlockHeader {
  uint32_t magic;  // kBlockMagic
  uint16_t type;   // BlockType
  uint16_t flags;  // 0
  uint32_t size;
  uint32_t crc;
};
static_assert(sizeof(BlockHeader) == 16);

// An extent: space owned by one stream (session x direction), filled with
// [ChunkHeader | payload | pad to 8] records. An all-zero ChunkHeader ends its data.
struct ExtentHeader {
  BlockHeader block;
  uint64_t sessionId;
  uint32_t sequence;  // 0, 1, 2 ... per stream
  uint8_t direction;  // Direction
  uint8_t reserved[3];
};
static_assert(sizeof(ExtentHeader) == 32);

// crc = crc32c(salt, file offset of this header, header with crc = 0).
struct ChunkHeader {
  uint32_t magic;         // kChunkMagic
  uint32_t length;        // payload bytes that follow this header
  uint64_t timeNs;        // when the bytes were received
  uint64_t streamOffset;  // position of the first payload byte in its stream
  uint32_t flags;         // 0
  uint32_t crc;
};
static_assert(sizeof(ChunkHeader) == 32);

struct AddressWire {
  uint8_t family;  // 0 unknown, 4, 6
  uint8_t reserved;
  uint16_t port;
  uint32_t scopeId;
  uint8_t addr[16];
};
static_assert(sizeof(AddressWire) == 24);

struct SessionOpenRecord {
  BlockHeader block;
  uint64_t sessionId;  // unique within the file
  uint64_t timeNs;     // accept time
  uint32_t flags;      // kSessionTlsTerminated ...
  uint32_t reserved;
  AddressWire client;    // the client's address
  AddressWire local;     // the address the client connected to (getsockname of the accepted fd)
  AddressWire upstream;  // the upstream server (family 0 if not known / connect failed)
};
static_assert(sizeof(SessionOpenRecord) == 112);

struct DirectionEndRecord {
  BlockHeader block;
  uint64_t sessionId;
  uint64_t timeNs;
  uint64_t streamBytes;  // bytes the direction carried in total (recorded + gaps)
  uint8_t direction;
  uint8_t kind;  // EndKind
  uint8_t reserved[2];
  int32_t error;  // errno for resets, else 0
};
static_assert(sizeof(DirectionEndRecord) == 48);

struct SessionCloseRecord {
  BlockHeader block;
  uint64_t sessionId;
  uint64_t timeNs;
  uint32_t reason;  // CloseReason
  int32_t error;
};
static_assert(sizeof(SessionCloseRecord) == 40);

struct GapRecord {
  BlockHeader block;
  uint64_t sessionId;
  uint64_t timeNs;
  uint64_t streamOffset;  // first missing byte
  uint64_t bytes;         // missing bytes
  uint8_t direction;
  uint8_t reason;  // GapReason
  uint8_t reserved[6];
};
static_assert(sizeof(GapRecord) == 56);

struct FileEndRecord {
  BlockHeader block;
  uint64_t timeNs;
  uint64_t sessions;      // sessions opened in this file
  uint64_t droppedBytes;  // bytes the writer could not record (its own count)
  uint32_t flags;         // kFileEndFull
  uint32_t reserved;
};
static_assert(sizeof(FileEndRecord) == 48);

#pragma pack(pop)

// CRC-32C (Castagnoli), standard init/final xor.
uint32_t crc32c(const void* data, size_t length, uint32_t crc = 0);

// The crc stored in a block or chunk header: crc32c over salt (8 bytes LE), file offset
// (8 bytes LE) and `fixed` bytes with the 4-byte crc field at crcFieldOffset taken as zero.
uint32_t recordCrc(uint64_t salt, uint64_t offset, const void* fixed, size_t size,
                   size_t crcFieldOffset);

}  // namespace grelay::tap
