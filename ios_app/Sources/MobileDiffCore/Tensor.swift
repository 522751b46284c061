/// A dense float32 array with its shape, row-major (C order), like a numpy array.
///
/// The pipeline hands these to a `ModelRunner`; layouts are the manifest's (NCHW latents,
/// NLC context).
public struct Tensor: Equatable, Sendable {
    public var shape: [Int]
    public var data: [Float]

    /// Fails when `data` does not hold exactly `shape`'s element count.
    public init(shape: [Int], data: [Float]) throws {
        guard shape.allSatisfy({ $0 >= 0 }), Tensor.count(shape) == data.count else {
            throw MobileDiffError.config(
                "a tensor of shape \(shape) needs \(Tensor.count(shape)) values, got \(data.count)")
        }
        self.shape = shape
        self.data = data
    }

    public init(zeros shape: [Int]) {
        self.shape = shape
        self.data = [Float](repeating: 0, count: Tensor.count(shape))
    }

    public static func count(_ shape: [Int]) -> Int { shape.reduce(1, *) }

    /// Tensors stacked along the first axis (`np.concatenate`); all must agree past it.
    public static func concatenate(_ parts: [Tensor]) throws -> Tensor {
        guard let first = parts.first else { throw MobileDiffError.config("nothing to concatenate") }
        let tail = Array(first.shape.dropFirst())
        var data: [Float] = []
        var batch = 0
        for part in parts {
            guard Array(part.shape.dropFirst()) == tail else {
                throw MobileDiffError.shapeMismatch(
                    what: "a tensor to concatenate", expected: [part.shape.first ?? 0] + tail, actual: part.shape)
            }
            data += part.data
            batch += part.shape.first ?? 0
        }
        return Tensor(unchecked: [batch] + tail, data)
    }

    init(unchecked shape: [Int], _ data: [Float]) {
        self.shape = shape
        self.data = data
    }

    /// Throws `shapeMismatch` unless the shape is `expected`.
    public func checkShape(_ expected: [Int], _ what: String) throws {
        if shape != expected {
            throw MobileDiffError.shapeMismatch(what: what, expected: expected, actual: shape)
        }
    }
}
