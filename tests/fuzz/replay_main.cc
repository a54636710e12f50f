// main() for the replay build of a fuzz target (any compiler, no libFuzzer): runs every file
// named on the command line, and every regular file inside every directory named, through
// LLVMFuzzerTestOneInput once, in name order. A broken property aborts (the test fails and
// the file being run is printed first); otherwise prints how many inputs ran.
//
//   config_fuzz_replay tests/fuzz/config_corpus [more files or directories...]
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
extern "C" __attribute__((weak)) int LLVMFuzzerInitialize(int* argc, char*** argv);

int main(int argc, char** argv) {
  if (LLVMFuzzerInitialize) {
    LLVMFuzzerInitialize(&argc, &argv);
  }
  std::vector<std::filesystem::path> files;
  for (int i = 1; i < argc; ++i) {
    std::error_code ec;
    const std::filesystem::path p(argv[i]);
    if (std::filesystem::is_directory(p, ec)) {
      for (const auto& entry : std::filesystem::recursive_directory_iterator(p, ec)) {
        if (entry.is_regular_file()) {
          files.push_back(entry.path());
        }
      }
    } else if (std::filesystem::is_regular_file(p, ec)) {
      files.push_back(p);
    } else {
      std::fprintf(stderr, "%s: not a file or directory\n", argv[i]);
      return 2;
    }
  }
  std::sort(files.begin(), files.end());
  if (files.empty()) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR_OR_FILE...: no input files found\n", argv[0]);
    return 2;
  }
  size_t bytes = 0;
  for (const auto& path : files) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
      std::fprintf(stderr, "%s: cannot read\n", path.c_str());
      return 2;
    }
    const std::vector<uint8_t> data((std::istreambuf_iterator<char>(in)),
                                    std::istreambuf_iterator<char>());
    std::fprintf(stderr, "running %s (%zu bytes)\n", path.c_str(), data.size());
    // A copy of exactly `size` bytes on the heap, so ASan catches reads past the end.
    std::vector<uint8_t> exact(data);
    static uint8_t empty_input = 0;
    LLVMFuzzerTestOneInput(exact.empty() ? &empty_input : exact.data(), exact.size());
    bytes += data.size();
  }
  std::printf("%zu inputs (%zu bytes) ran without a failure\n", files.size(), bytes);
  return 0;
}
