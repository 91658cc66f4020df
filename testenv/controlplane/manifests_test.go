package controlplane

import (
	"reflect"
	"testing"
)

func TestSplitDocuments(t *testing.T) {
	type doc struct {
		start, line int
		data        string
	}
	for _, tc := range []struct {
		name string
		in   string
		want []doc
	}{
		{"one", "a: 1\nb: 2\n", []doc{{1, 1, "a: 1\nb: 2\n"}}},
		{"leading separator", "---\na: 1\n", []doc{{1, 0, ""}, {2, 2, "a: 1\n"}}},
		{"comments and blanks before content", "a: 1\n--- # next\n\n# c\nb: 2\n", []doc{{1, 1, "a: 1\n"}, {3, 5, "\n# c\nb: 2\n"}}},
		{"not separators", "a: |\n  ---\n----: x\n---x: y\n", []doc{{1, 1, "a: |\n  ---\n----: x\n---x: y\n"}}},
		{"crlf and trailing blanks", "a: 1\r\n--- \t\r\nb: 2", []doc{{1, 1, "a: 1\r\n"}, {3, 3, "b: 2"}}},
		{"empty", "", []doc{{1, 0, ""}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []doc
			for _, d := range splitDocuments([]byte(tc.in)) {
				got = append(got, doc{d.start, d.line, string(d.data)})
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}
