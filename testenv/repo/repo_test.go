package repo

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func TestRootHasGoMod(t *testing.T) {
	root, err := Root()
	if err != nil {
		t.Fatal(err)
	}
	if modulePath(filepath.Join(root, "go.mod")) != Module {
		t.Fatalf("%s/go.mod does not declare %s", root, Module)
	}
	for _, d := range []func() (string, error){PcapDir, NetpolCasesDir} {
		p, err := d()
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(p, filepath.Join(root, "testdata")+string(filepath.Separator)) {
			t.Errorf("%s is not under %s/testdata", p, root)
		}
	}
	if _, err := Testdata("no-such-thing"); err == nil {
		t.Error("Testdata of a missing path: no error")
	}
}

// outside matches what looks for test data outside the repository: the
// steering repository's directory of given material beside the clone (its
// captures, its cases, a filepath.Join of its name). Written in pieces so
// that this file does not match itself.
var outside = regexp.MustCompile(`(\.\./|\b)` + `shared/(pcaps|netpol|design|hooks)|\.\./` + `shared\b|"` + `shared"`)

// TestNoOutsideTestdata fails if a Go file, the Makefile, the CI script or
// a script of the repository mentions the shared directory beside the
// repository: a fresh clone has nothing beside it, so every test reads
// testdata/ (repo.Testdata).
func TestNoOutsideTestdata(t *testing.T) {
	root, err := Root()
	if err != nil {
		t.Fatal(err)
	}
	var checked int
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if d.IsDir() {
			if rel == ".git" || rel == "testdata" || rel == "bin" {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") && rel != "Makefile" && !strings.HasPrefix(rel, ".ci/") &&
			!strings.HasPrefix(rel, "scripts/") && !strings.HasSuffix(path, ".sh") {
			return nil
		}
		checked++
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		s := bufio.NewScanner(f)
		s.Buffer(nil, 1<<20)
		for line := 1; s.Scan(); line++ {
			if outside.MatchString(s.Text()) {
				t.Errorf("%s:%d looks for test data outside the repository (use repo.Testdata): %s", rel, line, strings.TrimSpace(s.Text()))
			}
		}
		return s.Err()
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked < 100 {
		t.Fatalf("checked only %d files under %s", checked, root)
	}
}

func TestOutsidePattern(t *testing.T) {
	for _, tc := range []struct {
		line string
		want bool
	}{
		{`filepath.Join(d, "` + `shared", "pcaps")`, true},
		{`// found in ../` + `shar` + `ed/pcaps`, true},
		{`cp -r ../` + `shared .`, true},
		{`see ` + `shar` + `ed/netpol-cases`, true},
		{`// a pre-shared key`, false},
		{`shared   *clockCache[*sharedSecret]`, false},
		{`// shared informers`, false},
	} {
		if got := outside.MatchString(tc.line); got != tc.want {
			t.Errorf("%q: match %v, want %v", tc.line, got, tc.want)
		}
	}
}

// TestTestdataChecksums checks every file of testdata/pcaps and
// testdata/netpol-cases against the SHA-256 that testdata/README.md lists,
// and that the README lists every file and no missing one.
func TestTestdataChecksums(t *testing.T) {
	dir, err := Testdata()
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join(dir, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]string{}
	line := regexp.MustCompile(`(?m)^([0-9a-f]{64})  (\S+)$`)
	for _, m := range line.FindAllStringSubmatch(string(readme), -1) {
		listed[m[2]] = m[1]
	}
	seen := 0
	for _, sub := range []string{"pcaps", "netpol-cases"} {
		ents, err := os.ReadDir(filepath.Join(dir, sub))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			name := sub + "/" + e.Name()
			b, err := os.ReadFile(filepath.Join(dir, sub, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			sum := sha256.Sum256(b)
			want, ok := listed[name]
			switch {
			case !ok:
				t.Errorf("testdata/%s: not listed in testdata/README.md", name)
			case want != hex.EncodeToString(sum[:]):
				t.Errorf("testdata/%s: SHA-256 %x, README lists %s", name, sum, want)
			}
			delete(listed, name)
			seen++
		}
	}
	for name := range listed {
		t.Errorf("testdata/README.md lists %s, which is not there", name)
	}
	if seen < 100 {
		t.Errorf("only %d files in testdata", seen)
	}
}
