import Glibc

/// Path arithmetic on strings, as NSString's path methods did it, without Foundation.
public enum PathText {
    /// The directory part of `path`: "/a/b/c" → "/a/b", "/a" → "/", "c" → "". Repeated
    /// and trailing slashes are ignored.
    public static func parent(of path: String) -> String {
        let components = path.split(separator: "/", omittingEmptySubsequences: true)
        let isAbsolute = path.hasPrefix("/")
        guard components.count > 1 else { return isAbsolute ? "/" : "" }
        return (isAbsolute ? "/" : "") + components.dropLast().joined(separator: "/")
    }

    /// `component` under `directory`, with one slash between them.
    public static func joined(_ directory: String, _ component: String) -> String {
        if component.isEmpty { return directory }
        if directory.isEmpty { return component }
        return directory.hasSuffix("/") ? directory + component : directory + "/" + component
    }

    /// The absolute path with every symbolic link resolved (realpath(3)), or `path` itself
    /// when that fails (the file does not exist, a loop, no permission).
    public static func canonical(_ path: String) -> String {
        guard let resolved = realpath(path, nil) else { return path }
        defer { free(resolved) }
        return String(cString: resolved)
    }
}
