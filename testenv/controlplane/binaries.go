package controlplane

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// EnvDir names the directory holding the etcd and kube-apiserver binaries.
// `make test` sets it to the directory `make controlplane` built.
const EnvDir = "TRIREME_CONTROLPLANE_DIR"

// BuildCommand is what builds the binaries (into the cache, once).
const BuildCommand = "make controlplane"

// toolsModule is the tools module's directory, relative to the repository root.
const toolsModule = "tools/controlplane"

// keyFiles are hashed, in this order, into the cache key: the same list as
// tools/controlplane/build.sh, so both name the same directory.
var keyFiles = []string{"go.mod", "go.sum", "etcd/main.go", "build.sh"}

// Binaries returns the paths of etcd and kube-apiserver: from $TRIREME_CONTROLPLANE_DIR
// when set, else from the build cache of the tools module of this checkout.
// When they are missing the test fails if $TRIREME_CONTROLPLANE_DIR was set
// or CI is true (CI must run these tests, never skip them), and is skipped
// with the command that builds them otherwise.
func Binaries(t testing.TB) (etcd, apiserver string) {
	t.Helper()
	dir, from := os.Getenv(EnvDir), "$"+EnvDir
	var err error
	if dir == "" {
		from = "the build cache"
		dir, err = CacheDir()
	}
	if err == nil {
		err = complete(dir)
	}
	if err == nil {
		return filepath.Join(dir, "etcd"), filepath.Join(dir, "kube-apiserver")
	}
	msg := fmt.Sprintf("test control plane (etcd, kube-apiserver) not found in %s: %v; build it once with `%s` (minutes the first time, then cached)", from, err, BuildCommand)
	if ci, _ := strconv.ParseBool(os.Getenv("CI")); ci || os.Getenv(EnvDir) != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return "", ""
}

// complete reports whether dir holds a finished build: build.sh writes the
// stamp "complete" after both binaries and moves the directory in place.
func complete(dir string) error {
	for _, f := range []string{"complete", "etcd", "kube-apiserver"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			return err
		}
	}
	return nil
}

// CacheDir returns where tools/controlplane/build.sh puts the binaries of
// this checkout's tools module: $TRIREME_CONTROLPLANE_CACHE, else
// ${XDG_CACHE_HOME:-~/.cache}/trireme/controlplane, then the key.
func CacheDir() (string, error) {
	tools, err := findToolsModule()
	if err != nil {
		return "", err
	}
	key, err := cacheKey(tools)
	if err != nil {
		return "", err
	}
	root := os.Getenv("TRIREME_CONTROLPLANE_CACHE")
	if root == "" {
		base, err := os.UserCacheDir()
		if err != nil {
			return "", err
		}
		root = filepath.Join(base, "trireme", "controlplane")
	}
	return filepath.Join(root, key), nil
}

// cacheKey is the first 16 hex digits of the sha256 of keyFiles.
func cacheKey(tools string) (string, error) {
	h := sha256.New()
	for _, f := range keyFiles {
		b, err := os.ReadFile(filepath.Join(tools, f))
		if err != nil {
			return "", err
		}
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// findToolsModule walks up from the working directory (a package directory
// under go test) to the repository root holding tools/controlplane.
func findToolsModule() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		tools := filepath.Join(dir, toolsModule)
		if _, err := os.Stat(filepath.Join(tools, "go.sum")); err == nil {
			return tools, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New(toolsModule + " not found above the working directory")
		}
		dir = parent
	}
}
