package admin

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestRejectReasonsKnown: every reason the proxy refuses for has its own
// label value in ftpguard_rejects_total (else it is counted as "other"):
// a reason added to proxy/ must be added to rejectReasons too.
func TestRejectReasonsKnown(t *testing.T) {
	files, _ := filepath.Glob("../proxy/*.go")
	patterns := []*regexp.Regexp{
		regexp.MustCompile(`(?:reject|enforce)\([a-z.]*log, "([^"]+)"`), // a refusal
		regexp.MustCompile(`reason :?= "([^"]+)"`),                      // a reason chosen first
		regexp.MustCompile(`return "(max_[a-z_]+|shutting down)"`),      // acquire's
	}
	seen := 0
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, re := range patterns {
			for _, m := range re.FindAllSubmatch(b, -1) {
				seen++
				if _, ok := rejectIndex[string(m[1])]; !ok {
					t.Errorf("%s refuses for %q, which is not in rejectReasons (metrics.go)", f, m[1])
				}
			}
		}
	}
	if seen < 10 {
		t.Fatalf("found only %d refusals in proxy/: the patterns are out of date", seen)
	}
}
