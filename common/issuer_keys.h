// Issuer keys: the Ed25519 keys that sign grants (docs/grants.md, "Keys").
// An issuer holds a secret key file (0600, refused if anyone else may read
// it); jitlb holds a public key file listing every issuer it trusts, one per
// line, so that a key is rotated by adding the new line, waiting for the old
// key's grants to end, and removing the old line. Grants name their issuer by
// an 8-byte key id derived from the public key.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace jitlb {

using IssuerKeyId = std::array<uint8_t, 8>;
using GrantSignature = std::array<uint8_t, 64>;  // crypto_sign_BYTES

inline constexpr size_t kIssuerPublicKeySize = 32;  // crypto_sign_PUBLICKEYBYTES
inline constexpr size_t kIssuerSeedSize = 32;       // crypto_sign_SEEDBYTES
// First word of each line of the key files; the version is part of the tag.
inline constexpr std::string_view kIssuerSecretTag = "jitlb-issuer-secret-v1";
inline constexpr std::string_view kIssuerPublicTag = "jitlb-issuer-public-v1";
// key id = the first 8 bytes of BLAKE2b-256(domain || public key).
inline constexpr std::string_view kIssuerKeyIdDomain = "jitlb-issuer-key-id-v1";
// Files larger than this are refused before they are parsed.
inline constexpr size_t kMaxPublicKeyFileBytes = 1 << 20;
inline constexpr size_t kMaxSecretKeyFileBytes = 4096;
inline constexpr size_t kMaxKeyCommentBytes = 200;

struct IssuerPublicKey {
    std::array<uint8_t, kIssuerPublicKeySize> bytes{};
    friend bool operator==(const IssuerPublicKey&, const IssuerPublicKey&) = default;
};

IssuerKeyId issuer_key_id(const IssuerPublicKey& key) noexcept;
// 16 lowercase hex digits, as logs, errors and `jitctl` show a key id.
std::string key_id_hex(const IssuerKeyId& id);
// 43 characters of base64url without padding, as in the key files.
std::string public_key_base64(const IssuerPublicKey& key);

// --- errors --------------------------------------------------------------------

enum class KeyFileErrc : uint8_t {
    ok,
    io,                    // open/read/write failed (errno text in the message)
    exists,                // writing: the path exists (never overwritten)
    not_regular,           // not a regular file (directory, FIFO, device, ...)
    insecure_permissions,  // secret: readable by group/others; public: writable by them
    too_large,             // beyond kMax*KeyFileBytes
    syntax,                // a line that is not "TAG KEY [COMMENT]", or a bad comment
    bad_key,               // not base64url of 32 bytes, or not an Ed25519 public key
    duplicate_key,         // the same public key on two lines
    key_id_collision,      // two different keys with the same 8-byte id
};

std::string_view key_file_errc_name(KeyFileErrc code) noexcept;

struct KeyFileError {
    KeyFileErrc code = KeyFileErrc::ok;
    // "PATH:LINE: what was wrong, with the value, and what to do".
    std::string message;
    bool ok() const noexcept { return code == KeyFileErrc::ok; }
};

// --- keys ------------------------------------------------------------------------

// An Ed25519 secret key. The bytes never leave the object except into a
// secret key file; they are wiped (sodium_memzero) when it is destroyed or
// moved from. Move-only.
class IssuerSecretKey {
  public:
    // A new random key (crypto_sign_keypair).
    static IssuerSecretKey generate();
    // The key a 32-byte seed determines (what the secret key file stores).
    static IssuerSecretKey from_seed(std::span<const uint8_t, kIssuerSeedSize> seed);

    IssuerSecretKey(IssuerSecretKey&& other) noexcept;
    IssuerSecretKey& operator=(IssuerSecretKey&& other) noexcept;
    IssuerSecretKey(const IssuerSecretKey&) = delete;
    IssuerSecretKey& operator=(const IssuerSecretKey&) = delete;
    ~IssuerSecretKey();

    const IssuerPublicKey& public_key() const noexcept { return public_; }
    const IssuerKeyId& key_id() const noexcept { return key_id_; }
    // Detached Ed25519 signature of `message` (crypto_sign_detached).
    GrantSignature sign(std::span<const uint8_t> message) const noexcept;

  private:
    IssuerSecretKey() = default;
    void wipe() noexcept;
    friend KeyFileError write_secret_key_file(const std::string& path, const IssuerSecretKey& key);

    std::array<uint8_t, 64> secret_{};  // libsodium's form: seed || public key
    IssuerPublicKey public_;
    IssuerKeyId key_id_{};
};

// --- the trusted set -------------------------------------------------------------

struct TrustedIssuer {
    IssuerPublicKey key;
    IssuerKeyId key_id{};
    std::string comment;  // the rest of the key's line, for logs
    uint32_t line = 0;    // where it was read (0: added by code)
};

// The issuers whose grants verify, keyed by key id. Built from a public key
// file; re-reading the file builds a new set (a removed line is a removed key).
class TrustedIssuers {
  public:
    // Refuses a key already present (duplicate_key) or a different key with
    // the same id (key_id_collision); the set is unchanged then.
    KeyFileError add(const IssuerPublicKey& key, std::string comment = {}, uint32_t line = 0);

    // nullptr when no key with this id is trusted.
    const TrustedIssuer* find(const IssuerKeyId& id) const noexcept;
    size_t size() const noexcept { return entries_.size(); }
    bool empty() const noexcept { return entries_.empty(); }
    // In the order they were added (file order).
    const std::vector<TrustedIssuer>& entries() const noexcept { return entries_; }

  private:
    std::vector<TrustedIssuer> entries_;
    std::map<IssuerKeyId, size_t> by_id_;  // -> index in entries_
};

// --- public key files ---------------------------------------------------------------
// One key per line: "jitlb-issuer-public-v1 <base64url, 43 chars> [comment]".
// Blank lines and lines starting with '#' are ignored; spaces and tabs around
// the fields are. An empty file is a valid file that trusts no one.

// `source` names the text in errors (a path). `out` is replaced only on success.
KeyFileError parse_public_keys(std::string_view text, std::string_view source, TrustedIssuers& out);
// Refuses a file that group or others may write (anyone who can write it can
// open access for any source): the message says "chmod go-w PATH".
KeyFileError read_public_key_file(const std::string& path, TrustedIssuers& out);
// The key's line, ending in '\n'. The comment must be printable (no control
// characters) and at most kMaxKeyCommentBytes; write_public_key_file checks.
std::string public_key_line(const IssuerPublicKey& key, std::string_view comment);
// Creates `path` (O_EXCL: never overwrites) with mode 0644 and the key's line.
KeyFileError write_public_key_file(const std::string& path, const IssuerPublicKey& key,
                                   std::string_view comment);

// --- secret key files ----------------------------------------------------------------
// Exactly one line: "jitlb-issuer-secret-v1 <base64url of the 32-byte seed>",
// optionally followed by one '\n'.

KeyFileError parse_secret_key(std::string_view text, std::string_view source,
                              std::optional<IssuerSecretKey>& out);
// Refuses anything but a regular file readable by its owner only (mode & 077
// == 0): the message says "chmod 600 PATH".
KeyFileError read_secret_key_file(const std::string& path, std::optional<IssuerSecretKey>& out);
// Creates `path` with O_CREAT | O_EXCL | O_NOFOLLOW, mode 0600; never
// overwrites a file or follows a symlink. A failed write removes the file.
KeyFileError write_secret_key_file(const std::string& path, const IssuerSecretKey& key);

}  // namespace jitlb
