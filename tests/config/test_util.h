// Helpers shared by the config tests.
#pragma once

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

#include "config/loader.h"

namespace grelay::config::test {

// Joins lines with '\n', so line N of the result is element N-1: expected
// positions in the tests can be read straight off the source.
inline std::string lines(std::initializer_list<std::string_view> text) {
  std::string out;
  for (std::string_view line : text)
    out.append(line).append("\n");
  return out;
}

// The errors of `text` as "t.toml:LINE:COL: message".
inline std::vector<std::string> errorsOf(std::string_view text) {
  LoadResult result = loadString(text, "t.toml");
  std::vector<std::string> out;
  for (const ConfigError& error : result.errors)
    out.push_back(error.toString());
  return out;
}

// A temporary directory removed at the end of the test.
class TempDir {
public:
  TempDir() {
    char pattern[] = "/tmp/grelay-config-test-XXXXXX";
    path_ = ::mkdtemp(pattern);
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  const std::string& path() const { return path_; }

  // Creates `name` in the directory with `content`, returns its path.
  std::string write(const std::string& name, std::string_view content) const {
    std::string file = path_ + "/" + name;
    std::ofstream(file) << content;
    return file;
  }

private:
  std::string path_;
};

}  // namespace grelay::config::test
