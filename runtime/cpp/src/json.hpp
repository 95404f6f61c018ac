// A small JSON reader for the manifest and the sampler plans (RFC 8259; no writer).
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace sdrt::json {

class Value {
 public:
  enum class Kind { null, boolean, number, string, array, object };

  Kind kind() const { return kind_; }
  bool is_null() const { return kind_ == Kind::null; }
  bool is_number() const { return kind_ == Kind::number; }
  bool is_string() const { return kind_ == Kind::string; }
  bool is_array() const { return kind_ == Kind::array; }
  bool is_object() const { return kind_ == Kind::object; }

  // Typed access; each throws sdrt::Error naming `what` when the value has another type.
  double number(const std::string& what) const;
  long long integer(const std::string& what) const;
  const std::string& string(const std::string& what) const;
  const std::vector<Value>& array(const std::string& what) const;
  const std::map<std::string, Value>& object(const std::string& what) const;
  bool boolean(const std::string& what) const;

  // Object member; find() returns nullptr when absent, at() throws naming `what`.
  const Value* find(const std::string& key) const;
  const Value& at(const std::string& key, const std::string& what) const;

  static Value parse(const std::string& text, const std::string& source);

 private:
  friend class Parser;
  Kind kind_ = Kind::null;
  bool boolean_ = false;
  double number_ = 0;
  std::string string_;
  std::vector<Value> array_;
  std::map<std::string, Value> object_;
};

}  // namespace sdrt::json
