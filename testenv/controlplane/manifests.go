package controlplane

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/yaml"
)

// ValidateManifests has the API server behind cfg validate every object of
// a (multi-document) YAML manifest and persist nothing, as `kubectl apply
// --server-side --dry-run=server --validate=strict` does: each object is
// a server-side apply with dryRun=All and strict field validation, so it
// goes through decoding (unknown or duplicate fields are errors), defaulting,
// validation and admission. Errors name the document: source:line: Kind
// namespace/name: what the server said. Like kubectl, a namespaced object
// needs its namespace to exist (a dry-run Namespace is not created): create
// it first. A manifest without any object is an error.
func ValidateManifests(ctx context.Context, cfg *rest.Config, source string, data []byte) error {
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
	var errs []error
	objects := 0
	for _, doc := range splitDocuments(data) {
		// Leading newlines make the parser's line numbers the file's.
		j, err := yaml.YAMLToJSONStrict(append(bytes.Repeat([]byte("\n"), doc.start-1), doc.data...))
		if err != nil {
			errs = append(errs, fmt.Errorf("%s:%d: %s", source, doc.line, strings.ReplaceAll(err.Error(), "\n ", "")))
			continue
		}
		if s := string(bytes.TrimSpace(j)); s == "null" || s == "" {
			continue // only comments
		}
		objects++
		var obj unstructured.Unstructured
		if err := obj.UnmarshalJSON(j); err != nil {
			errs = append(errs, fmt.Errorf("%s:%d: %v", source, doc.line, err))
			continue
		}
		gvk := obj.GroupVersionKind()
		what := fmt.Sprintf("%s:%d: %s %s", source, doc.line, gvk.Kind, obj.GetName())
		if obj.GetName() == "" {
			errs = append(errs, fmt.Errorf("%s: no metadata.name", what))
			continue
		}
		mapping, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %v", what, err))
			continue
		}
		res := dyn.Resource(mapping.Resource)
		var ri dynamic.ResourceInterface = res
		if mapping.Scope.Name() == "namespace" {
			ns := obj.GetNamespace()
			if ns == "" {
				ns = metav1.NamespaceDefault
			}
			what = fmt.Sprintf("%s:%d: %s %s/%s", source, doc.line, gvk.Kind, ns, obj.GetName())
			ri = res.Namespace(ns)
		}
		force := true
		_, err = ri.Patch(ctx, obj.GetName(), types.ApplyPatchType, j, metav1.PatchOptions{
			DryRun:          []string{metav1.DryRunAll},
			FieldManager:    "trireme-manifest-check",
			Force:           &force,
			FieldValidation: metav1.FieldValidationStrict,
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %v", what, err))
		}
	}
	if objects == 0 && len(errs) == 0 {
		return fmt.Errorf("%s: no objects", source)
	}
	return errors.Join(errs...)
}

// document is one YAML document of a stream.
type document struct {
	start int // line of data's first line
	line  int // line of the first content (0 if none)
	data  []byte
}

// splitDocuments splits a YAML stream at its "---" lines, remembering for
// each document the line of its first content (not blank, not a comment).
func splitDocuments(data []byte) []document {
	var docs []document
	cur := document{start: 1}
	for i, l := range bytes.SplitAfter(data, []byte("\n")) {
		if isSeparator(l) {
			docs = append(docs, cur)
			cur = document{start: i + 2}
			continue
		}
		if t := bytes.TrimSpace(l); cur.line == 0 && len(t) > 0 && t[0] != '#' {
			cur.line = i + 1
		}
		cur.data = append(cur.data, l...)
	}
	return append(docs, cur)
}

// isSeparator reports a document start marker: "---" alone or followed by
// blanks or a comment.
func isSeparator(line []byte) bool {
	rest, ok := bytes.CutPrefix(bytes.TrimRight(line, "\r\n"), []byte("---"))
	if !ok {
		return false
	}
	rest = bytes.TrimLeft(rest, " \t")
	return len(rest) == 0 || rest[0] == '#'
}
