package k8s

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/yaml"
)

// MaxFileSize bounds one manifest file.
const MaxFileSize = 16 << 20

// Load reads a manifest file, or every *.yaml, *.yml and *.json file of a
// directory (not its subdirectories, as `kubectl apply -f DIR`), in name
// order. Every problem of every file is reported (errors.Join), each as
// "file:line: ..."; pods and policies must be in a defined namespace
// (CheckNamespaces). On error there is no partial result.
func Load(path string) (*Cluster, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	files := []string{path}
	if st.IsDir() {
		entries, err := os.ReadDir(path)
		if err != nil {
			return nil, err
		}
		files = files[:0]
		for _, e := range entries {
			switch strings.ToLower(filepath.Ext(e.Name())) {
			case ".yaml", ".yml", ".json":
				if e.Type().IsRegular() || e.Type()&os.ModeSymlink != 0 {
					files = append(files, filepath.Join(path, e.Name()))
				}
			}
		}
		slices.Sort(files)
		if len(files) == 0 {
			return nil, fmt.Errorf("%s: no *.yaml, *.yml or *.json file", path)
		}
	}
	c := &Cluster{}
	var errs []error
	for _, f := range files {
		data, err := readFile(f)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if err := c.Decode(f, data); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if err := c.CheckNamespaces(); err != nil {
		return nil, err
	}
	return c, nil
}

func readFile(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > MaxFileSize {
		return nil, fmt.Errorf("%s: larger than %d bytes", name, MaxFileSize)
	}
	return data, nil
}

// Decode adds every object of a YAML (multi-document) or JSON stream:
// NetworkPolicy (networking.k8s.io/v1), Namespace and Pod (v1), and lists
// of them (kind List or *List, with items). Unknown fields, unknown kinds and
// duplicates are errors. Every problem is reported (errors.Join), each as
// "filename:line: ...".
func (c *Cluster) Decode(filename string, data []byte) error {
	var errs []error
	for _, doc := range splitDocuments(data) {
		err := c.decodeObject(doc.data, "")
		if err == nil {
			continue
		}
		each := []error{err}
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			each = j.Unwrap()
		}
		for _, e := range each {
			errs = append(errs, fmt.Errorf("%s:%d: %s", filename, doc.line+yamlErrLine(e), yamlErrStrip(e)))
		}
	}
	return errors.Join(errs...)
}

type document struct {
	line int // 1-based line of the document's first line
	data []byte
}

// splitDocuments splits a YAML stream at "---" lines, keeping where each
// document starts.
func splitDocuments(data []byte) []document {
	var docs []document
	start, startLine, line := 0, 1, 1
	for i := 0; i <= len(data); {
		end := bytes.IndexByte(data[i:], '\n')
		next := len(data) + 1
		if end >= 0 {
			end += i
			next = end + 1
		} else {
			end = len(data)
		}
		l := data[i:end]
		if bytes.HasPrefix(l, []byte("---")) && (len(l) == 3 || l[3] == ' ' || l[3] == '\t' || l[3] == '\r' || l[3] == '#') {
			docs = append(docs, document{line: startLine, data: data[start:i]})
			start, startLine = min(next, len(data)), line+1
		}
		i = next
		line++
	}
	docs = append(docs, document{line: startLine, data: data[start:]})
	return docs
}

var yamlLineRE = regexp.MustCompile(`line (\d+): `)

// yamlErrLine is the document-relative line a YAML error names, minus one
// (0 when it names none).
func yamlErrLine(err error) int {
	m := yamlLineRE.FindStringSubmatch(err.Error())
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return max(n-1, 0)
}

func yamlErrStrip(err error) string {
	return yamlLineRE.ReplaceAllString(err.Error(), "")
}

type typeMeta struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
}

// decodeObject decodes one object (YAML or JSON); where is "" or the
// position in an enclosing list ("items[3]: ").
func (c *Cluster) decodeObject(data []byte, where string) error {
	var tm typeMeta
	var probe any
	if err := yaml.Unmarshal(data, &probe); err != nil {
		return fmt.Errorf("%s%v", where, err)
	}
	if probe == nil {
		if where != "" {
			return fmt.Errorf("%snull item", where)
		}
		return nil // empty document
	}
	if _, ok := probe.(map[string]any); !ok {
		return fmt.Errorf("%snot an object", where)
	}
	if err := yaml.Unmarshal(data, &tm); err != nil {
		return fmt.Errorf("%s%v", where, err)
	}
	wantVersion := func(v string) error {
		if tm.APIVersion != v {
			return fmt.Errorf("%s%s: apiVersion %q: want %q", where, tm.Kind, tm.APIVersion, v)
		}
		return nil
	}
	switch {
	case tm.Kind == "NetworkPolicy":
		if err := wantVersion("networking.k8s.io/v1"); err != nil {
			return err
		}
		var np networkingv1.NetworkPolicy
		if err := yaml.UnmarshalStrict(data, &np); err != nil {
			return fmt.Errorf("%sNetworkPolicy: %v", where, err)
		}
		if _, err := parseNetpol(&np); err != nil {
			return fmt.Errorf("%s%v", where, err)
		}
		if err := c.AddPolicy(np); err != nil {
			return fmt.Errorf("%s%v", where, err)
		}
	case tm.Kind == "Namespace":
		if err := wantVersion("v1"); err != nil {
			return err
		}
		var ns corev1.Namespace
		if err := yaml.UnmarshalStrict(data, &ns); err != nil {
			return fmt.Errorf("%sNamespace: %v", where, err)
		}
		if err := c.AddNamespace(Namespace{Name: ns.Name, Labels: ns.Labels}); err != nil {
			return fmt.Errorf("%s%v", where, err)
		}
	case tm.Kind == "Pod":
		if err := wantVersion("v1"); err != nil {
			return err
		}
		var po corev1.Pod
		if err := yaml.UnmarshalStrict(data, &po); err != nil {
			return fmt.Errorf("%sPod: %v", where, err)
		}
		if po.Spec.HostNetwork {
			return nil // NetworkPolicy does not apply to host-network pods
		}
		p, err := PodFromObject(&po)
		if err != nil {
			return fmt.Errorf("%s%v", where, err)
		}
		if err := c.AddPod(p); err != nil {
			return fmt.Errorf("%s%v", where, err)
		}
	case tm.Kind == "List" || strings.HasSuffix(tm.Kind, "List"):
		var l struct {
			APIVersion string            `json:"apiVersion"`
			Kind       string            `json:"kind"`
			Metadata   json.RawMessage   `json:"metadata"`
			Items      []json.RawMessage `json:"items"`
		}
		if err := yaml.UnmarshalStrict(data, &l); err != nil {
			return fmt.Errorf("%s%s: %v", where, tm.Kind, err)
		}
		var errs []error
		for i, item := range l.Items {
			if err := c.decodeObject(item, fmt.Sprintf("%sitems[%d]: ", where, i)); err != nil {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	case tm.Kind == "":
		return fmt.Errorf("%sobject has no kind", where)
	default:
		return fmt.Errorf("%sunsupported kind %q (want NetworkPolicy, Namespace, Pod or a List of them)", where, tm.Kind)
	}
	return nil
}
