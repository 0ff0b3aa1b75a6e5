import { defineConfig } from "vite";

// The IDL lives in ../idl (generated from the program): let the dev server read it.
export default defineConfig({
  base: "./",
  server: { fs: { allow: [".."] } },
  build: { chunkSizeWarningLimit: 2000 },
});
