// Package repo finds the repository a test runs in and its testdata/
// directory (the captures and NetworkPolicy cases the tests replay). A Go
// test's working directory is its package directory, so Root walks up from
// it to the go.mod of this module: the repository is self-contained, a
// fresh clone finds everything it needs inside it.
package repo

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Module is the module path Root looks for in go.mod.
const Module = "github.com/trireme-go/trireme"

// Root returns the repository's root directory: the first directory at or
// above the working directory whose go.mod declares Module.
func Root() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := wd; ; d = filepath.Dir(d) {
		if modulePath(filepath.Join(d, "go.mod")) == Module {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("repo: no go.mod of %s at or above %s", Module, wd)
		}
	}
}

// modulePath returns the module path a go.mod declares ("" if none).
func modulePath(gomod string) string {
	f, err := os.Open(gomod)
	if err != nil {
		return ""
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(s.Text()), "module "); ok {
			return strings.Trim(strings.TrimSpace(rest), `"`)
		}
	}
	return ""
}

// Testdata returns the path of testdata/<elem...> in the repository, and
// an error if it does not exist.
func Testdata(elem ...string) (string, error) {
	root, err := Root()
	if err != nil {
		return "", err
	}
	p := filepath.Join(append([]string{root, "testdata"}, elem...)...)
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("repo: %w", err)
	}
	return p, nil
}

// PcapDir is testdata/pcaps: real packet captures (testdata/README.md).
func PcapDir() (string, error) { return Testdata("pcaps") }

// NetpolCasesDir is testdata/netpol-cases: the cyclonus NetworkPolicy
// conformance cases (testdata/README.md).
func NetpolCasesDir() (string, error) { return Testdata("netpol-cases") }

// Glob returns the files of dir whose names end with one of suffixes,
// sorted by name.
func Glob(dir string, suffixes ...string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		for _, s := range suffixes {
			if !e.IsDir() && strings.HasSuffix(e.Name(), s) {
				out = append(out, filepath.Join(dir, e.Name()))
				break
			}
		}
	}
	sort.Strings(out)
	return out, nil
}
