// Package build is the build store on disk: it detects a release
// tarball's format, verifies its digest, extracts it safely through
// os.Root into a content-addressed read-only directory, parses the
// Procfile and the berth.json manifest, and garbage-collects builds.
//
// Import is hostile-input code. An upload (.tar, .tar.gz or .tar.zst, told
// apart by its first bytes) is read once: the SHA-256 of the raw bytes is
// computed while they are decompressed and unpacked into builds/.tmp-*/.
// Every entry is checked against what was already extracted before
// anything is written (no absolute paths, no "..", no symlink leaving the
// tree, no write through a symlink, no hard link to anything but an earlier
// file, no devices or FIFOs, no replacing an entry) and against Limits
// (total bytes, entries, path length, depth, and a decompression ratio
// checked as the stream is read so that bombs stop early). The stream is
// read in order by one goroutine; small files are then created and written
// by a few writer goroutines, each owning whole directories, because the
// kernel serializes file creation per directory. The tree is made
// read-only (files 0444 or 0555, directories 0555; no setuid, setgid or
// sticky bit; owned by the importing user), flushed with one syncfs(2)
// after per-file writeback was started during extraction, and renamed to
// builds/<sha256>/. A refused or interrupted import leaves nothing under a
// digest name; Open removes leftover .tmp-* directories. A private store
// (the agent as root) keeps each build reachable only by the uids of the
// apps that run it, through a POSIX ACL on its top directory (acl.go).
//
// It must not import other berth packages.
package build
