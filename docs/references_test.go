/*
Copyright 2026 The rkllm-operator Authors.

Licensed under the Apache License, Version 2.0 (the "License");
you may not use this file except in compliance with the License.
You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software
distributed under the License is distributed on an "AS IS" BASIS,
WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
See the License for the specific language governing permissions and
limitations under the License.
*/

// Package docs_test checks that the repository's references to its documentation
// resolve: a comment, config file or page that sends a reader to a page that does not
// exist (as .golangci.yml once did with docs/development.md) fails the build.
package docs_test

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var (
	// docMention is a path to a page of docs/ from the repository's top, as code
	// comments and config files write it; a URL's path (preceded by a path character)
	// is not one.
	docMention = regexp.MustCompile(`(?:^|[^A-Za-z0-9_./-])(?:\.\./)*(docs/[A-Za-z0-9_.-]+\.md)`)
	// mdLink is a Markdown link's target.
	mdLink = regexp.MustCompile(`\]\(([^)\s]+)\)`)
)

// skipped folders hold built or fetched files, not the project's.
var skipped = map[string]bool{".git": true, "bin": true, "node_modules": true, "vendor": true}

// textFile: the files whose references are checked.
func textFile(name string) bool {
	switch filepath.Ext(name) {
	case ".go", ".md", ".yml", ".yaml", ".sh", ".mjs", ".py", ".tpl", ".txt", ".c", ".h", ".json":
		return true
	}
	return name == "Makefile" || strings.HasPrefix(name, "Dockerfile")
}

func TestReferencesResolve(t *testing.T) {
	root := ".."
	checked := 0
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if path != root && (skipped[d.Name()] || strings.HasPrefix(d.Name(), ".") && d.Name() != ".ci") {
				return filepath.SkipDir
			}
			return nil
		}
		if !textFile(d.Name()) {
			return nil
		}
		data, err := os.ReadFile(path) //nolint:gosec // the repository's own files
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		missing := map[string]bool{}
		for _, target := range references(string(data), filepath.Ext(path) == ".md") {
			checked++
			resolved := filepath.Join(root, target.path)
			if target.relative {
				resolved = filepath.Join(filepath.Dir(path), target.path)
			}
			if _, err := os.Stat(resolved); err != nil && !missing[target.path] {
				missing[target.path] = true
				t.Errorf("%s refers to %s, which does not exist", rel, target.path)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked < 50 {
		t.Fatalf("only %d references found: is the walk reading the repository?", checked)
	}
}

type reference struct {
	path     string
	relative bool // to the referring file's folder, not the repository's top
}

// references lists the documentation pages a file refers to, and in Markdown the local
// targets of its links.
func references(text string, markdown bool) []reference {
	var out []reference
	for _, m := range docMention.FindAllStringSubmatch(text, -1) {
		out = append(out, reference{path: m[1]})
	}
	if !markdown {
		return out
	}
	for _, m := range mdLink.FindAllStringSubmatch(text, -1) {
		target, _, _ := strings.Cut(m[1], "#")
		if target == "" || strings.Contains(target, ":") {
			continue // an anchor on the same page, or a URL
		}
		out = append(out, reference{path: target, relative: true})
	}
	return out
}
