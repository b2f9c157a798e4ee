// Package build is the build store on disk: it detects a release
// tarball's format, verifies its digest, extracts it safely through
// os.Root into a content-addressed read-only directory, parses the
// Procfile and the berth.json manifest, and garbage-collects builds.
//
// It must not import other berth packages.
package build
